<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<!-- hbdnet bridge detections: orange-red 0.6 mm outlines, no fill, labelled with the score.
     Written in the QGIS 3.10 form (symbol layer <prop> elements), which every QGIS 3 reads. -->
<qgis version="3.10.0" styleCategories="Symbology|Labeling" labelsEnabled="1">
  <renderer-v2 type="singleSymbol" symbollevels="0" forceraster="0" enableorderby="0">
    <symbols>
      <symbol type="fill" name="0" alpha="1" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleFill" enabled="1" locked="0" pass="0">
          <prop k="border_width_map_unit_scale" v="3x:0,0,0,0,0,0"/>
          <prop k="color" v="255,69,0,0"/>
          <prop k="joinstyle" v="miter"/>
          <prop k="offset" v="0,0"/>
          <prop k="offset_map_unit_scale" v="3x:0,0,0,0,0,0"/>
          <prop k="offset_unit" v="MM"/>
          <prop k="outline_color" v="255,69,0,255"/>
          <prop k="outline_style" v="solid"/>
          <prop k="outline_width" v="0.6"/>
          <prop k="outline_width_unit" v="MM"/>
          <prop k="style" v="no"/>
          <data_defined_properties>
            <Option type="Map">
              <Option type="QString" name="name" value=""/>
              <Option name="properties"/>
              <Option type="QString" name="type" value="collection"/>
            </Option>
          </data_defined_properties>
        </layer>
      </symbol>
    </symbols>
    <rotation/>
    <sizescale/>
  </renderer-v2>
  <labeling type="simple">
    <settings calloutType="simple">
      <text-style fieldName="format_number(&quot;score&quot;, 2)" isExpression="1" fontSize="9" fontSizeUnit="Point" fontWeight="75" textColor="255,69,0,255" textOpacity="1" multilineHeight="1" blendMode="0">
        <text-buffer bufferDraw="1" bufferSize="0.8" bufferSizeUnits="MM" bufferColor="255,255,255,255" bufferOpacity="0.85" bufferNoFill="1" bufferJoinStyle="128" bufferBlendMode="0"/>
      </text-style>
      <placement placement="0" dist="1" distUnits="MM" priority="5" offsetType="0" quadOffset="4" fitInPolygonOnly="0" centroidWhole="0" centroidInside="0"/>
      <rendering drawLabels="1" obstacle="1" obstacleFactor="1" displayAll="0" upsidedownLabels="0" scaleVisibility="0" limitNumLabels="0" maxNumLabels="2000" fontLimitPixelSize="0" minFeatureSize="0" labelPerPart="0" mergeLines="0" zIndex="0"/>
    </settings>
  </labeling>
  <blendMode>0</blendMode>
  <featureBlendMode>0</featureBlendMode>
  <layerOpacity>1</layerOpacity>
  <previewExpression>format_number("score", 2)</previewExpression>
  <layerGeometryType>2</layerGeometryType>
</qgis>
